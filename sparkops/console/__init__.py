"""The operator console: pictures and figures for the Django admin (workflow DAGs, run
timelines, the dashboard), rendered on the server as SVG. `layout` and `svg` are pure Python
(unit-tested without a database); `dashboard` aggregates in the database; `views`, `forms`
and `scoping` plug them into the ModelAdmins."""
