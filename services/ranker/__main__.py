from recmesh.common.server import main
from services.ranker.config import RankerSettings
from services.ranker.server import build_service

main("ranker", RankerSettings, build_service)
