"""Reports: report.json is the source of truth; Markdown, HTML (inline SVG plots), steps.csv, the console table and compare are rendered from it."""
