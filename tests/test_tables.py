"""The one table renderer: plain text and Markdown, alignment, and the checks on its input."""

import pytest

from crisp.tables import table


def test_text_table_is_left_aligned_under_a_dashed_rule_without_trailing_spaces():
    text = table([["conv1", "1.000", None], ["fc", "0.25", "pruned"]], ["layer", "density", "why"])
    assert text.splitlines() == [
        "layer  density  why",
        "-----  -------  ------",
        "conv1  1.000",
        "fc     0.25     pruned",
    ]


def test_markdown_table_marks_right_aligned_columns():
    text = table([["a", 1.5], ["bb", 12]], ["name", "ms"], fmt="markdown", align="lr")
    assert text.splitlines() == ["| name |  ms |", "|------|----:|", "| a    | 1.5 |", "| bb   |  12 |"]


def test_empty_table_keeps_its_header():
    assert table([], ["a", "b"]).splitlines() == ["a  b", "-  -"]


@pytest.mark.parametrize("kwargs", [{"fmt": "html"}, {"align": "l"}, {"align": "lx"}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        table([["x", "y"]], ["a", "b"], **kwargs)


def test_a_row_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        table([["x", "y"], ["z"]], ["a", "b"])
