"""What a run looks like to people: SVG charts, the run report (report.html), shared with the
dashboard. Reads only a run's own records."""
