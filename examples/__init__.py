"""Example web apps that use growthhub_async the way we recommend (issue 15).

- :mod:`examples.fastapi_app`: FastAPI under uvicorn (``uvicorn examples.fastapi_app:app``);
- :mod:`examples.aiohttp_app`: aiohttp.web (``python -m examples.aiohttp_app``);
- :mod:`examples.common`: what both share: the client from environment variables, the request
  body, and the HTTP answer for an outcome.

They use the public API only; the tests run each under its real server against the sandbox.
"""
