"""Pattern and sparsity validation."""

import pytest

from crisp import Pattern, PatternError
from crisp.sparsity.pattern import check_sparsity, resolve_pattern


@pytest.mark.parametrize("n,m,block,match", [
    (3, 2, 4, "n must be <= m"),
    (0, 4, 32, "n must be >= 1"),
    (2, 4, 30, "multiple of m=4"),
    (2, 4, 0, "multiple of m=4"),
])
def test_bad_patterns_are_refused(n, m, block, match):
    with pytest.raises(PatternError, match=match):
        Pattern(n, m, block)


def test_parse_and_resolve():
    assert resolve_pattern("2:4", 32) == Pattern(2, 4, 32)
    assert resolve_pattern(Pattern(1, 4, 16)) == Pattern(1, 4, 16)
    with pytest.raises(PatternError, match="'n:m'"):
        resolve_pattern("2-4", 32)
    with pytest.raises(PatternError, match="disagrees"):
        resolve_pattern(Pattern(2, 4, 16), 32)


@pytest.mark.parametrize("value", [0.3, 1.0, 1.5, float("nan"), "lots"])
def test_sparsity_outside_range_is_refused(value):
    with pytest.raises(PatternError):
        check_sparsity(value, Pattern(2, 4, 32))


def test_sparsity_at_nm_floor_is_allowed():
    assert check_sparsity(0.5, Pattern(2, 4, 32)) == 0.5
    assert check_sparsity(0.75, Pattern(1, 4, 32)) == 0.75


def test_parse_nm_is_the_one_n_m_parser():
    from crisp.runtime.simulator.arch import parse_nm as arch_nm
    from crisp.runtime.simulator.errors import ArchError
    from crisp.sparsity.pattern import parse_nm

    assert parse_nm(" 2:4 ") == (2, 4) and arch_nm("3:5") == (3, 5)  # no block needed
    with pytest.raises(PatternError, match="n must be <= m"):
        parse_nm("5:4")
    with pytest.raises(ArchError, match="needs 1 <= n <= m.*'n:m'"):
        arch_nm("2-4")
