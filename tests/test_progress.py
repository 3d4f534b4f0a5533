"""anomedge.progress: plain lines at each quarter when piped, silent when off."""

from __future__ import annotations

import io

from anomedge.progress import progress, steps


def test_piped_progress_prints_a_line_per_quarter():
    out = io.StringIO()
    assert list(steps(range(8), 8, "features", stream=out)) == list(range(8))
    lines = out.getvalue().splitlines()
    assert [l.split(" (")[0] for l in lines] == ["features: 25 %", "features: 50 %", "features: 75 %", "features: 100 %"]
    assert lines[-1].startswith("features: 100 % (8/8), ") and lines[-1].endswith(" s")


def test_big_steps_say_the_real_percentage_once_and_off_is_silent():
    out = io.StringIO()
    with progress(3, "coreset", stream=out) as bar:
        bar.update(1)
        bar.update(2)
    assert out.getvalue().splitlines()[0].startswith("coreset: 33 % (1/3)")
    assert len(out.getvalue().splitlines()) == 2
    quiet = io.StringIO()
    list(steps(range(5), 5, "x", enabled=False, stream=quiet))
    assert quiet.getvalue() == ""
