from recmesh.common.server import main
from services.retrieval.config import RetrievalSettings
from services.retrieval.server import build_service

main("retrieval", RetrievalSettings, build_service)
