"""The secured workshop stack's pieces without a stack: client settings, env files, learners' names and logins."""

from __future__ import annotations

from pathlib import Path

import pytest

from effectively_once.kafka import client_settings
from effectively_once.stack.secure import client_config_text, env_text, hide_password, read_env_file
from effectively_once.stack.workshop import Learner, hba_line, learner_dsn, new_learners


# What a learner's shell must not carry into the tests' own commands.
# -- no services ---------------------------------------------------------------------------------
def test_client_settings_reads_pairs_and_json():
    pairs = "security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512,sasl.username=u,sasl.password=p=q"
    assert client_settings(pairs) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                      "sasl.username": "u", "sasl.password": "p=q"}
    assert client_settings('{"sasl.password": "a,b", "ssl.ca.location": "/etc/ca.pem"}') == {
        "sasl.password": "a,b", "ssl.ca.location": "/etc/ca.pem"}
    assert client_settings("") == {}


def test_client_settings_names_the_variable_when_malformed():
    with pytest.raises(ValueError, match="EO_KAFKA_CONFIG: 'sasl.username' is not key=value"):
        client_settings("security.protocol=SASL_SSL,sasl.username")
    with pytest.raises(ValueError, match="EO_KAFKA_CONFIG: not a JSON object"):
        client_settings("{not json")


def test_client_settings_come_from_the_environment(monkeypatch):
    from effectively_once.kafka import admin_client

    monkeypatch.setenv("EO_KAFKA_CONFIG", "client.id=from-env")
    assert client_settings() == {"client.id": "from-env"}
    admin_client("127.0.0.1:1")  # accepts the merged settings (librdkafka checks each name)


def test_every_client_config_of_the_package_adds_the_client_settings():
    """A dict with ``bootstrap.servers`` anywhere in the package also unpacks ``client_settings()``,
    so a cluster that wants a login is reached by every client, children included."""
    import ast

    package = Path(__file__).resolve().parents[2] / "effectively_once"
    missing, found = [], 0
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Dict):
                continue
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            if "bootstrap.servers" not in keys:
                continue
            found += 1
            unpacked = [v for k, v in zip(node.keys, node.values, strict=True) if k is None]
            if not any(isinstance(v, ast.Call) and getattr(v.func, "id", "") == "client_settings" for v in unpacked):
                missing.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    assert found >= 10, f"only {found} client configs found: has the way clients are configured changed?"
    assert not missing, f"client configs without **client_settings(): {missing}"


def test_env_file_round_trip(tmp_path):
    values = {"EO_BACKEND": "external", "EO_KAFKA_CONFIG": client_config_text({"a": "1", "b": "2"})}
    path = tmp_path / "x.env"
    path.write_text(env_text(values, "first line\n\nthird line"))
    assert path.read_text().startswith("# first line\n#\n# third line\n")
    assert read_env_file(path) == {"EO_BACKEND": "external", "EO_KAFKA_CONFIG": "a=1,b=2"}


def test_learner_names_continue_after_existing_files(tmp_path):
    assert [learner.name for learner in new_learners(tmp_path, 2)] == ["learner01", "learner02"]
    (tmp_path / "learner07.env").write_text("")
    later = new_learners(tmp_path, 3)
    assert [learner.name for learner in later] == ["learner08", "learner09", "learner10"]
    assert len({learner.password for learner in later}) == 3


def test_learner_logins_name_their_own_prefix():
    learner = Learner("learner03", "pw")
    assert hba_line(learner).split()[:3] == ["host", "/^learner03_", "learner03"]
    assert learner_dsn("postgresql://postgres:secret@127.0.0.1:5432/postgres", learner) == \
        "postgresql://learner03:pw@127.0.0.1:5432/postgres"
    assert hide_password("postgresql://postgres:secret@127.0.0.1:5432/postgres") == \
        "postgresql://postgres@127.0.0.1:5432/postgres"
    assert hide_password("postgresql://a:b@[::1]:5432/x?sslmode=require") == "postgresql://a@[::1]:5432/x?sslmode=require"
    assert hide_password("postgresql://postgres@127.0.0.1/postgres") == "postgresql://postgres@127.0.0.1/postgres"
