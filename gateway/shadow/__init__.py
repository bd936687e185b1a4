"""Shadow traffic: mirror a share of a route's requests to the other side and compare.

The copy goes to the other side of the split: while legacy answers clients the module is
compared, and once the module is primary legacy is. See :mod:`.mirror` for the marker
header ``x-gateway-shadow`` and the rules that keep a copy from writing anything.
"""

MARKER = b"x-gateway-shadow"
