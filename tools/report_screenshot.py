#!/usr/bin/env python3
"""Renders a phi3patch report.html in a real browser (headless Chromium) to a PNG, to look at it
as a researcher would: every figure must show, on its colour scale, with no file beside the page.

    python3 tools/report_screenshot.py [out/report.html] [--png report.png] [--width 1400]
                                       [--height 0] [--alone]

--alone copies report.html by itself into an empty temporary directory first: the page must
look the same there (it is self-contained: every SVG inline). --height 0 (default) sizes the
window to the whole page (read from the page's own layout in a first headless pass); give a
height to cut it. Needs chromium (Debian: apt-get install chromium) or chrome on PATH, or
CHROMIUM=/path/to/browser. Exits 2 when no browser is found.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile


def browser():
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def run(cmd):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)


def page_height(exe, url, width):
    """The page's full height in CSS pixels, from the rendered DOM (--dump-dom of a script's result)."""
    with tempfile.TemporaryDirectory() as d:
        probe = os.path.join(d, "probe.html")
        with open(probe, "w") as f:
            f.write('<html><body><iframe id="f" src="%s" style="width:%dpx;height:100px;border:0"></iframe>'
                    '<script>document.getElementById("f").onload=function(){var h=this.contentDocument'
                    '.documentElement.scrollHeight;document.title="H"+h;document.body.setAttribute("data-h",h)}'
                    '</script></body></html>' % (url, width))
        r = run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                 "--virtual-time-budget=5000", "--dump-dom", "file://" + probe])
        m = re.search(r'data-h="(\d+)"', r.stdout)
        return int(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", nargs="?", default="out/report.html")
    ap.add_argument("--png", default=None, help="output PNG (default: beside the HTML, report.png)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=0)
    ap.add_argument("--alone", action="store_true", help="render a copy of the page alone in an empty directory")
    a = ap.parse_args()
    exe = browser()
    if not exe:
        print("no chromium/chrome found (apt-get install chromium, or set CHROMIUM)", file=sys.stderr)
        return 2
    html = os.path.abspath(a.html)
    if not os.path.isfile(html):
        print("no such file: " + html, file=sys.stderr)
        return 1
    png = os.path.abspath(a.png or os.path.join(os.path.dirname(html), "report.png"))
    with tempfile.TemporaryDirectory() as d:
        if a.alone:
            shutil.copy(html, os.path.join(d, "report.html"))
            html = os.path.join(d, "report.html")
        url = "file://" + html
        height = a.height or page_height(exe, url, a.width) or 3000
        r = run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--window-size=%d,%d" % (a.width, height), "--screenshot=" + png, url])
        if r.returncode != 0 or not os.path.isfile(png):
            print(r.stderr, file=sys.stderr)
            return 1
    print("%s (%dx%d)" % (png, a.width, height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
