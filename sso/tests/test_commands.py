"""manage.py sso_config show | set | test."""
import json

import pytest
from django.core.management import CommandError, call_command

from .conftest import config_body, provider


def test_it_sets_shows_and_tests_the_config(op, db, tmp_path, capsys):
    path = tmp_path / "sso.json"
    path.write_text(json.dumps(config_body(provider(op))))
    call_command("sso_config", "set", str(path))
    assert "Saved: 1 provider(s)" in capsys.readouterr().out
    call_command("sso_config", "show")
    shown = json.loads(capsys.readouterr().out)
    assert shown["providers"][0]["name"] == "corp"
    call_command("sso_config", "test", "corp")
    out = capsys.readouterr().out
    assert "[ok] discovery" in out and "[ok] jwks" in out


def test_it_rejects_an_invalid_file(op, db, tmp_path):
    path = tmp_path / "sso.json"
    path.write_text(json.dumps({"providers": [{"name": "x", "type": "oidc", "client_secret": "s3cret"}]}))
    with pytest.raises(CommandError) as err:
        call_command("sso_config", "set", str(path))
    assert "not accepted" in str(err.value) and "s3cret" not in str(err.value)


def test_it_fails_the_test_for_an_unknown_provider(op, db):
    with pytest.raises(CommandError, match="No saved provider"):
        call_command("sso_config", "test", "ghost")
