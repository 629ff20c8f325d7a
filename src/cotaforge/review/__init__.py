"""Human review of balanced samples: a web app where annotators listen, read, and accept, reject or edit.

`db` stores annotators, sessions, claims, skips, decisions and revisions (SQLite by default, PostgreSQL by
URL); `samples` reads the run directory; `queue` serves stratified work; `app` is the FastAPI app and
`throttle` limits its sign-in attempts; `agreement` and `summary` measure the decisions; `labelstudio`
exchanges tasks with Label Studio. What `publish` applies is read by `cotaforge.decisions`, below this package.
"""
