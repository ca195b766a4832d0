"""The hygiene check refuses what made the last whitepaper need corrections."""

from __future__ import annotations

import pytest

from common.errors import BuildError
from report.hygiene import check_text


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("ok\nspeed: XX tok/s", 2, "placeholder 'XX'"),
        ("ok\n\nX.X GB saved", 3, "placeholder 'X.X'"),
        ("TODO: fill in", 1, "placeholder 'TODO'"),
        ("| a | None |", 1, "'None'"),
        ("mean NaN ms", 1, "'NaN'"),
        ("a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> other", 2, "merge-conflict"),
    ],
)
def test_problems_are_named_with_file_and_line(text: str, line: int, what: str) -> None:
    with pytest.raises(BuildError) as err:
        check_text(text, "docs/memory.md")
    assert str(err.value).startswith(f"docs/memory.md:{line}: ")
    assert what in str(err.value)


def test_untrusted_text_may_say_anything() -> None:
    check_text(
        'before\n<pre class="untrusted transcript">return None\nTODO XX\n=======\n</pre>\n'
        'a <span class="untrusted">NaN</span> b',
        "x.md",
    )


def test_untrusted_regions_do_not_hide_what_follows() -> None:
    with pytest.raises(BuildError, match=r"x\.md:3:"):
        check_text('<span class="untrusted">None</span>\n\nNone', "x.md")


def test_docstrings_from_code_may_mention_none_but_not_placeholders() -> None:
    check_text('<div class="from-code" markdown>\nreturns None\n</div><!-- from-code -->', "m.md")
    with pytest.raises(BuildError, match="TODO"):
        check_text('<div class="from-code" markdown>\nTODO\n</div><!-- from-code -->', "m.md")


def test_words_that_merely_contain_the_patterns_pass() -> None:
    check_text("XXL Nonetheless nano Q4_K_M x86_64 informal ========", "x.md")


def test_a_path_of_the_building_machine_is_refused_wherever_the_tool_prints_it() -> None:
    home = "/home/alice"
    # Escaped as the filters escape it: the check decodes entities first.
    page = 'ok\n\n<pre class="untrusted command">/home/alice/&#46;cache/llama-server</pre>'
    with pytest.raises(BuildError, match=r"x\.md:3: path of the building machine '/home/alice'"):
        check_text(page, "x.md", [home])
    # A longer name that only starts the same is another directory.
    check_text("<code>/home/alicia/x</code>", "x.md", [home])
    # Model output may mention any path: it is what the model wrote, not what we printed.
    check_text('<pre class="untrusted transcript">cd /home/alice/src</pre>', "x.md", [home])


def test_user_text_may_say_none_or_tbd_but_a_figure_may_not() -> None:
    """A label, release or file name is the user's text: `None`, `TBD` or `-inf` in it is
    not a missing figure. Regression: a release labelled "TBD" failed the build."""
    from report.formatting import code, escape_text

    labels = ["TBD", "model-None", "-inf.gguf"]
    page = (
        "| Model | Release | File | Decode |\n|---|---|---|---|\n"
        f"| {escape_text(labels[1])} | {escape_text(labels[0])} | {code(labels[2])} "
        "| 12.0&nbsp;tokens/s |\n"
    )
    check_text(page, "x.md", user_texts=labels)
    # Only the exact user text is exempt: the same words printed as a figure still fail.
    with pytest.raises(BuildError, match="missing value printed as a figure 'None'"):
        check_text(page + "| model-None | TBD | x | None |\n", "x.md", user_texts=labels)
    with pytest.raises(BuildError, match=r"x\.md:3: "):  # without them, the labels fail
        check_text(page, "x.md")


def test_bidi_controls_are_shown_not_applied() -> None:
    """U+202E in an output or a label would reverse the text after it on the page; it is
    shown as a visible marker instead."""
    from report.formatting import escape_text, transcript

    shown = str(escape_text("abc\u202edef"))
    assert "\u202e" not in shown and "U+202E" in shown
    assert "\u2067" not in str(transcript("x\u2067y"))
