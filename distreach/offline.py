"""The JavaScript that makes an HTML figure open with no network (Vega, Vega-Lite and vega-embed,
bundled by vl-convert), made once and put in every page (:func:`distreach.figures.save`)."""

from __future__ import annotations

import logging
from pathlib import Path

from .io import atomic_path

log = logging.getLogger(__name__)


def _bundle_made_by() -> str:
    """The versions a bundle of :func:`vega_bundle` is made for: vl-convert's and Vega-Lite's."""
    from altair.utils._importers import import_vl_convert, vl_version_for_vl_convert

    return f"vl-convert {import_vl_convert().__version__}, Vega-Lite {vl_version_for_vl_convert()}"


def vega_bundle() -> str:
    """The JavaScript an offline HTML figure carries (Vega, Vega-Lite and vega-embed, bundled by
    vl-convert for altair's Vega-Lite version): what ``inline=True`` puts in every page, bundled
    anew in every process that asks for it (seconds). The workflow makes it once
    (:func:`write_vega_bundle`) and the jobs that draw a figure hand it to
    :func:`distreach.figures.save` (:func:`read_vega_bundle`)."""
    from altair.utils._importers import import_vl_convert, vl_version_for_vl_convert

    return import_vl_convert().javascript_bundle(vl_version=vl_version_for_vl_convert())


BUNDLE_HEADER = "// distreach: bundle of {}\n"


def write_vega_bundle(path: str | Path) -> None:
    """:func:`vega_bundle`, written atomically to ``path`` after a first line naming what made it."""
    with atomic_path(Path(path)) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(BUNDLE_HEADER.format(_bundle_made_by()) + vega_bundle())


def read_vega_bundle(path: str | Path) -> str | None:
    """The bundle :func:`write_vega_bundle` wrote to ``path``, or None (and a log line) where it
    was made by other versions of vl-convert or Vega-Lite than this environment's:
    :func:`distreach.figures.save` then bundles anew, so a page never carries JavaScript of another version."""
    with open(path, encoding="utf-8", newline="") as f:  # the bundle's own line ends, as vl-convert made them
        text = f.read()
    made_by = _bundle_made_by()
    header = BUNDLE_HEADER.format(made_by)
    if text.startswith(header):
        return text[len(header):]
    log.warning("%s was made by other versions (%s); this environment has %s: bundling anew", path,
                text.partition("\n")[0].removeprefix("// distreach: bundle of ")[:80], made_by)
    return None


class InlineTemplate:
    """altair's offline HTML page (its ``inline`` template) around a bundle made beforehand."""

    def __init__(self, bundle: str):
        self.bundle = bundle

    def render(self, **kwargs) -> str:
        from altair.utils.html import INLINE_HTML_TEMPLATE

        return INLINE_HTML_TEMPLATE.render(vegaembed_script=self.bundle, **kwargs)
