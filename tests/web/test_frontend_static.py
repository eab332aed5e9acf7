"""Static checks on frontend/: the conventions that keep it safe and simple (no browser)."""

from __future__ import annotations

import re
from pathlib import Path

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"
MODULES = sorted((FRONTEND / "js").glob("*.js"))
CSP = "default-src 'self'; script-src 'self'; img-src 'self' blob: data:; style-src 'self'"


def test_csp_meta_and_module_entry():
    html = (FRONTEND / "index.html").read_text()
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in html
    assert '<script type="module" src="js/main.js"></script>' in html
    assert "<script>" not in html and "style=" not in html  # nothing inline for the CSP to block


def test_only_api_js_calls_fetch():
    callers = [m.name for m in MODULES if re.search(r"\bfetch\(", m.read_text())]
    assert callers == ["api.js"]


def test_no_html_parsing_of_strings():
    pattern = re.compile(
        r"innerHTML|outerHTML\s*=|insertAdjacentHTML|document\.write|\beval\(|new Function"
    )
    offenders = [m.name for m in MODULES if pattern.search(m.read_text())]
    assert offenders == []


def test_nothing_from_outside_the_origin():
    pattern = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", re.IGNORECASE)
    for path in [*MODULES, FRONTEND / "index.html", FRONTEND / "styles.css"]:
        text = path.read_text()
        assert not pattern.search(text), f"{path.name} refers to another origin"
    assert "@import" not in (FRONTEND / "styles.css").read_text()


def test_state_module_is_pure():
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", (FRONTEND / "js" / "state.js").read_text(), flags=re.S)
    assert "import " not in text
    assert not re.search(r"\b(document|window|history|location|fetch)\b", text)


def test_every_imported_module_exists():
    for module in MODULES:
        for target in re.findall(r"from '\./([\w.]+)'", module.read_text()):
            assert (FRONTEND / "js" / target).exists(), f"{module.name} imports missing {target}"
