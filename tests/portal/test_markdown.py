"""AsyncAPI descriptions are CommonMark (AsyncAPI 3.0 §Info Object): the template filters render
them, and nothing a provider writes becomes script, an event handler or a javascript: link."""

from __future__ import annotations

import re

import pytest

from portal.templatetags.eventgate import markdown, markdown_inline, markdown_text, sanitize_html

XSS_MARKDOWN = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](<javascript:alert(1)>)",
    "<javascript:alert(1)>",
    "![x](javascript:alert(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    '<a href="javascript:alert(1)" onclick="alert(2)">click</a>',
    "```\n</code></pre><script>alert(1)</script>\n```",
]
# What could only come from a bug in the Markdown renderer: the sanitizer must stop it on its own.
XSS_HTML = [
    "<script>alert(1)</script>",
    '<img src="x" onerror="alert(1)">',
    '<a href="javascript:alert(1)">click</a>',
    '<a href=" JAVASCRIPT:alert(1)">click</a>',
    '<p onmouseover="alert(1)">text</p>',
    '<iframe src="https://evil.example"></iframe>',
    '<svg onload="alert(1)"></svg>',
    '<a href="https://example.com" style="position:fixed">x</a>',
]


def _assert_harmless(html: str) -> None:
    """No dangerous element, and no tag with an event handler, a style or a script URL.

    Escaped text (``&lt;script&gt;``) is fine: it shows the attack as the words it is."""
    tags = re.findall(r"<[a-zA-Z][^>]*>", html)
    for tag in tags:
        assert not re.match(r"<(script|iframe|svg|style|object|embed)\b", tag, re.IGNORECASE), tag
        assert not re.search(r"\son[a-z]+\s*=", tag, re.IGNORECASE), tag
        assert not re.search(r"\sstyle\s*=", tag, re.IGNORECASE), tag
        assert not re.search(
            r"""\s(href|src)\s*=\s*["']?\s*(javascript|data|vbscript):""", tag, re.IGNORECASE
        ), tag


@pytest.mark.parametrize("text", XSS_MARKDOWN)
def test_markdown_never_lets_script_through(text):
    _assert_harmless(markdown(text))
    _assert_harmless(markdown_inline(text))
    _assert_harmless(markdown_text(text))


@pytest.mark.parametrize("html", XSS_HTML)
def test_sanitizer_stops_script_the_renderer_might_let_through(html):
    _assert_harmless(sanitize_html(html))


def test_raw_html_is_shown_as_text():
    assert markdown("<b>hi</b>") == "<p>&lt;b&gt;hi&lt;/b&gt;</p>\n"


def test_bold_becomes_strong():
    assert markdown("**Demo data.** Simulated.") == "<p><strong>Demo data.</strong> Simulated.</p>\n"
    assert markdown_inline("**bold**") == "<strong>bold</strong>"


def test_links_keep_their_url_and_get_nofollow_noopener():
    html = markdown_inline("[here](https://example.com/a?b=1&c=2)")
    assert html == '<a href="https://example.com/a?b=1&amp;c=2" rel="nofollow noopener">here</a>'


def test_line_breaks_inside_a_paragraph_are_not_hard_breaks():
    assert "<br" not in markdown("one sentence\nwrapped in the YAML file.")


def test_code_blocks_and_tables_render():
    html = markdown('```json\n{"a": 1}\n```\n\n| a | b |\n|:--|--:|\n| 1 | 2 |')
    assert '<pre><code>{"a": 1}\n</code></pre>' in html
    assert '<th style="text-align:left">a</th>' in html


def test_headings_start_below_the_pages_own():
    assert markdown("# One\n\n###### Six") == "<h3>One</h3>\n<h6>Six</h6>\n"


def test_card_text_drops_markup_but_keeps_words():
    assert markdown_text("Prices in `USD`, see [docs](https://example.com) <b>") == (
        "Prices in USD, see docs &lt;b&gt;"
    )


def test_images_become_links_so_no_url_loads_with_the_page():
    # An <img> would fetch the provider's URL for every visitor: a tracking pixel.
    assert markdown("![i](http://host/x.png)") == (
        '<p><a href="http://host/x.png" rel="nofollow noopener">i</a></p>\n'
    )
    assert markdown_inline('![](https://host/x.png "Status")') == (
        '<a href="https://host/x.png" title="Status" rel="nofollow noopener">https://host/x.png</a>'
    )
    assert markdown_text("Status ![*green*](https://host/x.png)") == "Status green"


def test_an_image_inside_a_link_becomes_the_links_words():
    assert markdown_inline("[![build passing](https://ci.example/badge.svg)](https://ci.example)") == (
        '<a href="https://ci.example" rel="nofollow noopener">build passing</a>'
    )


def test_sanitizer_drops_img_tags():
    assert "<img" not in sanitize_html('<p><img src="http://host/x.png" alt="i"></p>')
