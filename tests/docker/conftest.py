"""The docker lane's own tests: a real Docker engine (``make test-docker`` makes sure one answers), run with
``EO_BACKEND=docker`` by ``tools/docker_lane.py``. Each test brings its own stack up and down in a private
state directory (``private_home``) and checks with ``docker ps -a`` that no container is left.
"""

from tests.services import private_home  # noqa: F401
