"""What the local directives share: turn generated reST lines into the directive's nodes."""
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.nodes import nested_parse_with_titles


def parse_lines(directive, lines, source):
    """The nodes of ``lines`` (reST, sections allowed) parsed in ``directive``'s context."""
    node = nodes.section()
    node.document = directive.state.document
    nested_parse_with_titles(directive.state, StringList(lines, source=source), node)
    return node.children
