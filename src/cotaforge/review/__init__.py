"""Human review of balanced samples: a web app where annotators listen, read, and accept, reject or edit.

`db` stores annotators, sessions, claims, decisions and revisions (SQLite by default, PostgreSQL by URL);
`samples` reads the run directory; `queue` serves stratified work; `app` is the FastAPI app;
`decisions` turns the stored decisions into what `publish` applies; `agreement` and `summary` measure them;
`labelstudio` exchanges tasks with Label Studio.
"""
