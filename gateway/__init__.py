"""Chat gateway: a strangler-fig proxy in front of the legacy Node chat platform."""
