"""HTML pages for program managers (templates + htmx + plotly), calling the same services as the API."""
