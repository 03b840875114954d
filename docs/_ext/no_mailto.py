"""Metric names such as ``TAR@1%FAR`` stay text.

docutils turns any ``word@word`` into a ``mailto:`` link; this project has no e-mail
addresses in its docs, and "TAR@FAR"/"FNIR@FPIR" are everywhere, so every mailto
reference is replaced by its plain text.
"""
from docutils import nodes
from docutils.transforms import Transform


class UnlinkMailto(Transform):
    default_priority = 100  # before Sphinx resolves references

    def apply(self):
        for ref in list(self.document.findall(nodes.reference)):
            if ref.get("refuri", "").startswith("mailto:"):
                ref.replace_self(nodes.Text(ref.astext()))


def setup(app):
    app.add_transform(UnlinkMailto)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
