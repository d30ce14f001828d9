"""Sphinx extension for this book: keep every page's scripts local and loaded once.

Jupyter Book 1 always loads sphinx-thebe, even with thebe switched off in _config.yml;
its inline configuration names a script on unpkg.com and is emitted twice per page,
which throws "Identifier 'THEBE_JS_URL' has already been declared" in the browser.
The book does not use thebe (Colab is its live-code path), so its scripts are dropped,
and any other script registered twice is kept once. The widget manager is told where its
vendored fonts are.
"""

from __future__ import annotations

from sphinx.builders.html._assets import _JavaScript


# ipywidgets 8 typesets widget labels through the MathJax 2 API (MathJax.Hub.Queue) whenever
# a global MathJax exists; the book loads MathJax 3, which has no Hub. Route those calls to
# MathJax 3's typesetPromise once MathJax has started.
MATHJAX2_SHIM = """
(function () {
  var hub = {Queue: function (job) {
    var element = Array.isArray(job) ? job[2] : undefined;
    var mj = window.MathJax;
    var run = function () { if (element && mj.typesetPromise) { mj.typesetPromise([element]); } };
    if (mj.startup && mj.startup.promise) { mj.startup.promise.then(run); } else { run(); }
  }};
  var config = window.MathJax = window.MathJax || {};
  config.Hub = hub;  /* until MathJax 3 starts and replaces the global */
  config.startup = config.startup || {};
  config.startup.ready = function () { window.MathJax.startup.defaultReady(); window.MathJax.Hub = hub; };
})();"""


def _name(script) -> str:
    # Sphinx 7.4 wraps scripts in _JavaScript objects; older versions use str subclasses.
    return str(getattr(script, "filename", script) or "")


def _local_scripts_once(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    kept, seen = [], set()
    for script in scripts:
        body = getattr(script, "attributes", {}).get("body", "")
        if "THEBE_JS_URL" in body or _name(script).endswith("sphinx-thebe.js"):
            continue
        key = (_name(script), body)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    # The widget manager defines AMD modules named "@jupyter-widgets/base", ".../controls", ...;
    # each bundle's webpack runtime takes its public path (where it fetches the icon fonts)
    # from the folder of its module's URL, and RequireJS resolves an id without a path entry
    # against the page's own folder (book/@jupyter-widgets/: 404). Map the whole scope to the
    # vendored copy (RequireJS is loaded just before the manager).
    for index, script in enumerate(kept):
        if _name(script).endswith("html-manager/embed-amd.js"):
            folder = context["pathto"]("vendor/html-manager", 1)
            body = f'require.config({{paths: {{"@jupyter-widgets": "{folder}", "@jupyter-widgets/html-manager/dist": "{folder}"}}}});'
            kept.insert(index, _JavaScript("", body=body + MATHJAX2_SHIM))
            break
    scripts[:] = kept


def setup(app):
    app.connect("html-page-context", _local_scripts_once, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
