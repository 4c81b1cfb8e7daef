"""Spec files and stores a new user brings: encodings, repeated grid values, damaged or foreign stores."""
import sqlite3

import pytest
from click.testing import CliRunner
from helpers import TINY_SPEC

from fastlora.cli import main
from fastlora.errors import FastLoRAError
from fastlora.sweep import load_spec, parse_spec


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# ------------------------------------------------------------------------------ spec files
def test_a_spec_that_is_not_utf8_is_refused_naming_the_file_and_the_byte(tmp_path):
    spec = tmp_path / "latin1.toml"
    spec.write_bytes(TINY_SPEC.replace('name = "tiny"', 'name = "tiny"\ndescription = "Größe"').encode("latin-1"))
    offset = spec.read_bytes().index(b"\xf6")
    line = one_error_line(CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "x.sqlite")]))
    assert str(spec) in line and f"byte 0xf6 at offset {offset}" in line and "UTF-8" in line
    assert not (tmp_path / "x.sqlite").exists()


def test_a_spec_with_a_utf8_byte_order_mark_is_read(tmp_path):
    spec = tmp_path / "bom.toml"
    spec.write_bytes(b"\xef\xbb\xbf" + TINY_SPEC.encode())
    assert load_spec(spec).name == "tiny"


def test_repeated_grid_values_are_refused_naming_the_key():
    with pytest.raises(FastLoRAError, match=r"grid key 'T' lists 3 more than once"):
        parse_spec(TINY_SPEC.replace("T = [2, 3]", "T = [3, 2, 3]"))
