"""The operator console, the top layer: the admin site and its dashboard, and the ModelAdmins
that show or start runs (`workflows_admin`, `runs_admin`, `triggers_admin`, registered by
`apps.SparkOpsAdminConfig.ready`; the other apps' admins live in their apps). Pictures and
figures are rendered on the server as SVG: `layout` and `svg` are pure Python (unit-tested
without a database); `dashboard` aggregates in the database; `views` and `forms` plug them
into the ModelAdmins."""
