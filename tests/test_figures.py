"""Pictures: captions keep the spaces between their words."""

import numpy as np
from PIL import Image, ImageDraw

import synthetic

# ------------------------------------------------------------------ captions

WORDS = "FINDINGS: Heart size is normal. IMPRESSION: No acute cardiopulmonary process; CT recommended."


def blank_runs(words, font):
    """Widths in px of the ink-free column runs between the first and last inked column, when
    draw_words draws words (white on black)."""
    image = Image.new("L", (int(synthetic.words_width(words, font)) + 8, 24), 0)
    synthetic.draw_words(ImageDraw.Draw(image), (4, 4), words, font, 255)
    ink = (np.asarray(image) > 40).any(axis=0)
    cols = np.nonzero(ink)[0]
    runs, width = [], 0
    for inked in ink[cols[0]:cols[-1] + 1]:
        if inked and width:
            runs.append(width)
        width = 0 if inked else width + 1
    return runs


def test_caption_words_are_visibly_apart():
    """Between two words there is a gap at least 2 px wider than any gap between two letters of a
    word. Drawn as one string, the built-in font's 2-px space fails this (it reads "Noacute")."""
    font = synthetic.caption_font()
    words = WORDS.split()
    inside = max(max(blank_runs([w], font), default=0) for w in words)
    gaps = [r for r in blank_runs(words, font) if r >= inside + 2]
    assert len(gaps) == len(words) - 1, (inside, blank_runs(words, font))


def test_wrap_words_keeps_every_word_and_fills_lines():
    font = synthetic.caption_font()
    lines = synthetic.wrap_words(WORDS + " Supercalifragilisticexpialidocious-opacity", font, 120)
    assert [w for line in lines for w in line] == (WORDS + " Supercalifragilisticexpialidocious-opacity").split()
    for line, after in zip(lines, lines[1:] + [None]):
        assert len(line) == 1 or synthetic.words_width(line, font) <= 120      # fits, or one long word
        if after:                                                      # greedy: the next word did not fit
            assert synthetic.words_width(line + after[:1], font) > 120
    assert lines[-1] == ["Supercalifragilisticexpialidocious-opacity"]        # wider than 120 px alone
