"""The workshop plans and README's time add up from the course map, and leave nothing out."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from effectively_once.course.map import COURSE, LAB, WORKSHOP_PLANS, WorkshopPlan, exercise_minutes, total_minutes
from tests.conftest import ROOT


def names(blocks) -> list[str]:
    return [b[0] if isinstance(b, tuple) else b for b in blocks]


@pytest.mark.parametrize("plan", WORKSHOP_PLANS, ids=[p.title for p in WORKSHOP_PLANS])
def test_each_plan_fills_its_length_exactly(plan):
    assert plan.total() == plan.length_minutes, f"{plan.title}: the blocks add up to {plan.total()} minutes"
    start, _name, minutes = plan.schedule()[-1]
    assert start + minutes == plan.length_minutes


@pytest.mark.parametrize("plan", WORKSHOP_PLANS, ids=[p.title for p in WORKSHOP_PLANS])
def test_each_plan_has_every_notebook_and_every_lab_once(plan):
    wanted = [nb.stem for nb in COURSE] + [LAB + nb.stem for nb in COURSE if nb.exercise_minutes]
    taught = [n for n in names(plan.blocks) if n in wanted]
    assert sorted(taught + list(plan.homework)) == sorted(wanted), plan.title
    in_day = [n for n in taught if not n.startswith(LAB)]
    assert in_day == [nb.stem for nb in COURSE if nb.stem in in_day], "notebooks in the order they are read"
    for lab in (n for n in taught if n.startswith(LAB)):
        assert taught.index(lab.removeprefix(LAB)) < taught.index(lab), f"{lab} before its notebook"
    assert any(n.startswith(LAB) for n in taught), f"{plan.title} leaves no time for the labs"


def test_the_full_day_teaches_everything_and_the_minutes_come_from_the_course_map():
    full = next(p for p in WORKSHOP_PLANS if p.title == "Full day")
    assert not full.homework
    breaks = sum(b[1] for b in full.blocks if isinstance(b, tuple))
    assert full.length_minutes == total_minutes() + exercise_minutes() + breaks


def test_a_lab_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="has no lab"):
        WorkshopPlan("x", 15, ("lab 07_review",)).total()


def test_readme_states_the_course_maps_sum():
    readme = " ".join((ROOT / "README.md").read_text().split())
    found = re.search(r"about ([\d.]+) hours for the notebooks \((\d+) minutes\) and ([\d.]+) more for the "
                      r"exercises \((\d+) minutes\)", readme)
    assert found, "README no longer says how long the course takes"
    assert int(found[2]) == total_minutes() and int(found[4]) == exercise_minutes()
    assert abs(float(found[1]) * 60 - total_minutes()) <= 15 and abs(float(found[3]) * 60 - exercise_minutes()) <= 15
    table_total = re.search(r"\| \| \*total\* \| (\d+) \|", readme)
    assert table_total and int(table_total[1]) == total_minutes()


def test_readme_guide_and_time_lines_match_the_course_map():
    result = subprocess.run([sys.executable, "tools/notebooks.py", "course", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    guide = (ROOT / "docs" / "instructor-guide.md").read_text()
    for plan in WORKSHOP_PLANS:
        assert plan.markdown() in guide, f"docs/instructor-guide.md lacks the {plan.title} plan"
    for nb in COURSE:
        for kind, minutes in (("notebooks", nb.minutes), ("solutions", nb.exercise_minutes)):
            source = ROOT / "sources" / kind / f"{nb.stem}.md"
            if minutes is not None:
                assert f"**Time:** about {minutes} minutes" in source.read_text(), source.name
