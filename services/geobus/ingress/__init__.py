"""The HTTP ingress: accept GeoJSON documents, spool them, convert them off the loop.

``create_app`` builds the Starlette application (its lifespan owns the store,
the broker publisher and the conversion process pool); ``serve`` runs it
with uvicorn. See ``app.py`` for the routes and ``runner.py`` for what
happens to a job after its 202.
"""
