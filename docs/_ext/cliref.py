"""``.. cli-reference::`` — the ``qme-ext`` reference, generated from its argparse parser.

Every subcommand of :func:`qme_ext.cli.build_parser` gets a section with its one-line help
and its ``--help`` text, so the page cannot fall behind the parser.
"""
import argparse
import os

from sphinx.util.docutils import SphinxDirective

from rst_lines import parse_lines


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


class CliReference(SphinxDirective):
    has_content = False

    def run(self):
        from qme_ext.cli import build_parser

        os.environ.setdefault("COLUMNS", "92")  # argparse wraps its help to this width
        parser = build_parser()
        lines = [".. code-block:: text", ""]
        lines += ["   " + ln for ln in parser.format_help().splitlines()] + [""]
        for name, sub in _subparsers(parser).items():
            title = f"qme-ext {name}"
            lines += [f".. _cli-{name}:", "", title, "-" * len(title), ""]
            if sub.description:
                lines += [sub.description.replace("*", r"\*"), ""]
            lines += [".. code-block:: text", ""]
            lines += ["   " + ln for ln in sub.format_help().splitlines()] + [""]
        return parse_lines(self, lines, "<cli-reference>")


def setup(app):
    app.add_directive("cli-reference", CliReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
