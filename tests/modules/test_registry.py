import pytest

import modules
from modules import ModuleContext, UnknownModule, get_factory, names, register


def test_builtin_names_are_listed():
    assert {"session", "ai", "admin", "websocket"} <= set(names())


def test_builtin_session_factory_is_imported_lazily():
    from modules.session import create_app

    assert get_factory("session") is create_app


def test_builtin_ai_factory_builds_an_asgi_app():
    app = get_factory("ai")(ModuleContext(dispatcher=None, env={}))
    assert callable(app)


def test_unknown_name_raises_unknown_module_lookup_error():
    with pytest.raises(LookupError) as info:
        get_factory("nope")
    assert isinstance(info.value, UnknownModule)
    assert "nope" in str(info.value) and "session" in str(info.value)


def test_registered_factory_is_returned_and_listed(monkeypatch):
    monkeypatch.setattr(modules, "_registered", dict(modules._registered))

    def factory(ctx):
        async def app(scope, receive, send):
            return None

        return app

    register("custom-x", factory)
    assert get_factory("custom-x") is factory
    assert "custom-x" in names()


def test_module_context_defaults_to_os_environ():
    import os

    assert ModuleContext().env is os.environ
    assert ModuleContext().dispatcher is None
