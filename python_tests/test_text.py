"""Offline English text: standard-library docstring sentences, split reproducibly."""
import pytest

from obert_kernels.app.text import docstring_sentences, split_sentences, stdlib_sentences


def test_stdlib_sentences_are_prose_and_reproducible():
    s = stdlib_sentences()
    assert len(s) > 1000  # ~3,900 on Python 3.11
    assert len(set(s)) == len(s)
    assert all(x[0].isupper() and x.endswith(".") and ">>>" not in x for x in s)
    assert stdlib_sentences(50) == s[:50]


def test_split_is_disjoint_and_seeded():
    s = stdlib_sentences(300)
    a, b = split_sentences(s, [100, 150], seed=3)
    assert len(a) == 100 and len(b) == 150 and not set(a) & set(b)
    assert split_sentences(s, [100, 150], seed=3) == [a, b]
    assert split_sentences(s, [100, 150], seed=4) != [a, b]
    with pytest.raises(ValueError, match="only 300"):
        split_sentences(s, [200, 200])


def test_docstring_filter_drops_code():
    doc = """Return the frobnicated value of the given widget.

    Example::

        >>> frob(x) == 3

    The result is cached for the lifetime of the process. Call reset_cache() to drop it.
    """
    import inspect

    got = docstring_sentences(inspect.cleandoc(doc))
    assert got == ["Return the frobnicated value of the given widget.", "The result is cached for the lifetime of the process."]
