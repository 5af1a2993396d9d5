import pytest

from obert_kernels import parse_pattern


@pytest.mark.parametrize("text,group,n", [("unstructured", 1, 0), ("block4", 4, 0), ("2:4", 4, 2), ("1:3", 3, 1), (" 4:8 ", 8, 4)])
def test_parse(text, group, n):
    p = parse_pattern(text)
    assert (p.group_size, p.n_prune) == (group, n)
    assert parse_pattern(p.name) == p


@pytest.mark.parametrize("bad", ["", "block8", "4:4", "0:4", "5:4", "a:b", "2:", "2-4"])
def test_parse_rejects(bad):
    with pytest.raises(ValueError, match="unknown pattern"):
        parse_pattern(bad)


def test_parse_rejects_non_string():
    with pytest.raises(TypeError):
        parse_pattern(4)


def test_subsets_in_combinations_order():
    assert parse_pattern("2:4").subsets == ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
    assert len(parse_pattern("3:8").subsets) == 56


@pytest.mark.parametrize("pattern,B", [("block4", 50), ("2:4", 30), ("3:8", 12)])
def test_block_size_must_hold_groups(pattern, B):
    with pytest.raises(ValueError, match="divisible by the group size"):
        parse_pattern(pattern).check_block_size(B)
