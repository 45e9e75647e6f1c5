"""Reports: ``report.json`` is the source of truth; Markdown and the console table are rendered from it."""
