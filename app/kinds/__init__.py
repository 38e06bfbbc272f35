"""The built-in job kinds, one module each with its schemas and its `KIND` declaration (app.jobs.kinds)."""
