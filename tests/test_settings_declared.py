"""Settings declared once: both planes read exactly what they declare, the shared ACS-auth and storage settings
parse identically in both, blank means default everywhere, and the docs' tables are the declarations'."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from common.settings import AcsAuthSettings, Setting, SettingsError, StorageSettings, declared
from devstack import settings_docs
from function_app import settings as function_settings
from streamer import settings as streamer_settings
from tests.test_functions_settings import MINIMAL as FUNCTION_BASE
from tests.test_functions_settings import ReadRecorder

STREAMER_BASE = {"ACS_RESOURCE_ID": "abc", "AZURE_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net"}
PLANES = [(streamer_settings, STREAMER_BASE), (function_settings, FUNCTION_BASE)]
SHARED = (*declared(AcsAuthSettings), *declared(StorageSettings))


def read_settings(module: Any) -> tuple[Setting[Any], ...]:
    return tuple(s for s in module.DECLARED if s.parse is not None)


@pytest.mark.parametrize(("module", "base"), PLANES)
def test_each_plane_reads_exactly_what_it_declares(module: Any, base: dict[str, str]) -> None:
    env = ReadRecorder(base)
    module.Settings.from_env(env)
    assert env.read == {s.env for s in read_settings(module)}
    # What we declare but do not read is read by the platform (the Functions worker or host); the fixed ones are some.
    platform = {s.env for s in module.DECLARED if s.parse is None}
    assert set(module.ENV_VARS) - env.read == platform
    assert set(getattr(module, "FIXED_VALUES", {})) <= platform


@pytest.mark.parametrize(("module", "base"), PLANES)
def test_both_planes_inherit_the_shared_declarations(module: Any, base: dict[str, str]) -> None:
    assert issubclass(module.Settings, AcsAuthSettings) and issubclass(module.Settings, StorageSettings)
    assert set(SHARED) <= set(module.DECLARED)


@pytest.mark.parametrize("env", [
    {},
    {"ACS_JWT_ISSUER": " https://issuer.example ", "RECORDINGS_CONTAINER": " rec ", "AZURE_CLIENT_ID": " id "},
    {"AZURE_STORAGE_CONNECTION_STRING": " UseDevelopmentStorage=true ", "AZURE_STORAGE_ACCOUNT_URL": ""},
    {"ACS_JWKS_URL": "http://127.0.0.1:9/keys/", "ACS_RESOURCE_ID": " guid "},
])
def test_shared_settings_parse_identically_in_both_planes(env: dict[str, str]) -> None:
    same = {"ACS_RESOURCE_ID": "guid", "AZURE_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net", **env}
    streamer = streamer_settings.Settings.from_env({**STREAMER_BASE, **same})
    functions = function_settings.Settings.from_env({**FUNCTION_BASE, **same})
    fields = [f.name for cls in (AcsAuthSettings, StorageSettings) for f in dataclasses.fields(cls)]
    assert [getattr(streamer, f) for f in fields] == [getattr(functions, f) for f in fields]
    if env.get("RECORDINGS_CONTAINER"):
        assert streamer.container == "rec" and streamer.jwt_issuer == "https://issuer.example"


@pytest.mark.parametrize("bad", [{"ACS_JWKS_URL": "http://keys.example/k"}, {"AZURE_STORAGE_ACCOUNT_URL": "ftp://a"},
                                 {"ACS_RESOURCE_ID": " "}])
def test_shared_settings_are_refused_alike(bad: dict[str, str]) -> None:
    messages = set()
    for module, base in PLANES:
        with pytest.raises(SettingsError) as info:
            module.Settings.from_env({**base, **bad})
        messages.add(str(info.value).split(";")[0].split(" (")[0])
    assert len(messages) == 1 and next(iter(bad)) in messages.pop()


@pytest.mark.parametrize(("module", "base"), PLANES)
def test_blank_means_the_default(module: Any, base: dict[str, str]) -> None:
    defaults = module.Settings.from_env(base)
    fields = {f.metadata["setting"].env: f.name for f in dataclasses.fields(module.Settings)}
    for s in read_settings(module):
        if s.env in base:
            continue
        got = module.Settings.from_env({**base, s.env: "  \t"})
        assert getattr(got, fields[s.env]) == getattr(defaults, fields[s.env]) == s.default, s.env


def test_worker_settings_are_fixed_and_not_read_by_us() -> None:
    fixed = [s for s in function_settings.DECLARED if s.fixed is not None]
    assert {s.env for s in fixed} == {"PYTHON_SCRIPT_FILE_NAME", "PYTHON_ENABLE_INIT_INDEXING",
                                      f"{function_settings.QUEUE_CONNECTION}__credential"}
    assert all(s.parse is None for s in fixed)
    # The queue trigger's connection is the host's too: declared (the Bicep sets it), never read by our code.
    conn = function_settings.QUEUE_CONNECTION
    host_read = {s.env for s in function_settings.DECLARED if s.env.startswith(conn)}
    assert host_read == {conn, f"{conn}__queueServiceUri", f"{conn}__credential", f"{conn}__clientId"}
    assert all(s.parse is None for s in function_settings.DECLARED if s.env in host_read)
    with pytest.raises(TypeError):
        fixed[0].read({fixed[0].env: "x"})


def test_docs_tables_are_generated_from_the_declarations() -> None:
    stale = [str(path) for path, (now, new) in settings_docs.rendered().items() if now != new]
    assert not stale, f"run `python -m devstack.settings_docs`: {stale}"
    for path, named in settings_docs.tables().items():
        text = path.read_text(encoding="utf-8")
        for settings in named.values():
            for s in settings:
                assert f"| `{s.env}` |" in text, (path.name, s.env)


def test_a_stale_table_is_noticed() -> None:
    # Negative control: the check above can fail.
    decl = streamer_settings.DECLARED
    doc = (f"intro\n{settings_docs.begin_marker('t')}\n| old |\n{settings_docs.end_marker('t')}\nafter\n")
    new = settings_docs.render(doc, "t", decl)
    assert new != doc and new.startswith("intro\n") and new.endswith("after\n") and "| old |" not in new
    assert settings_docs.render(new, "t", decl) == new
    assert "**local only:** " in new and "| `PORT` | `8080` | listen port |" in new
    with pytest.raises(ValueError, match="markers"):
        settings_docs.render("no markers here", "t", decl)
