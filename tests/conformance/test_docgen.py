"""The API docs' conformance tables and examples are what docgen renders from the tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from tests.conformance import docgen


@pytest.mark.parametrize("doc", ["etsi004", "etsi014"])
def test_api_doc_is_generated_from_the_tests(doc: str) -> None:
    path = docgen.DOCS / f"{doc}.md"
    text = path.read_text()
    assert docgen.BEGIN in text, f"{path.name} has no generated conformance table"
    assert docgen.render(doc, text) == text, (
        f"{path.name} is stale: run `python -m tests.conformance.docgen --write`")


def test_every_yes_row_names_real_km_tests_that_exist() -> None:
    found = docgen.claims()
    assert {c.doc for c in found} == {"etsi004", "etsi014"}
    for c in found:
        file, name = c.test.split("::")
        assert f"def {name}(" in (docgen.HERE.parents[1] / file).read_text(), c


def test_a_claim_in_a_file_using_the_test_double_is_refused(tmp_path: Path) -> None:
    (tmp_path / "test_double.py").write_text(textwrap.dedent('''
        import pytest
        from tests.support.fake_km import FakeKeyNetwork

        @pytest.mark.conformance("etsi004", "6.3", "counter-proposal")
        def test_claim() -> None: ...
    '''))
    with pytest.raises(docgen.NotRealKm, match="without the real key manager"):
        docgen.claims(tmp_path)
