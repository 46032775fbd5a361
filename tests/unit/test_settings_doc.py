"""docs/SETTINGS.md is generated from the settings classes and must match them."""

from __future__ import annotations

from common.settings import REPLACED, SETTINGS_GROUPS, env_name
from common.settings_doc import COMMAND, DOC, main, render, type_text


def test_the_settings_reference_is_up_to_date():
    current = DOC.read_text() if DOC.exists() else ""
    assert current == render(), f"{DOC.name} is stale: regenerate it with `{COMMAND}`"


def test_the_reference_lists_every_variable_and_every_removed_name():
    text = render()
    for group in SETTINGS_GROUPS:
        assert f"## {group.__name__}" in text
        for name in group.model_fields:
            assert f"| `{env_name(name)}` |" in text
    for old, new in REPLACED.items():
        assert f"| `{old}` | `{new}` |" in text


def test_types_read_like_the_validation():
    from common.settings import KafkaSettings, MongoSettings, ServiceSettings

    field = KafkaSettings.model_fields["images_partitions"]
    assert type_text(field.annotation, field.metadata) == "int ≥ 1"
    field = MongoSettings.model_fields["mongo_write_concern_w"]
    assert type_text(field.annotation, field.metadata) == "`majority` or int ≥ 1"
    field = ServiceSettings.model_fields["max_request_bytes"]
    assert type_text(field.annotation, field.metadata) == "int ≥ 1024, or unset"


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    out = tmp_path / "SETTINGS.md"
    out.write_text("old\n")
    assert main(["--out", str(out), "--check"]) == 1
    assert COMMAND in capsys.readouterr().err
    assert main(["--out", str(out)]) == 0 and main(["--out", str(out), "--check"]) == 0
