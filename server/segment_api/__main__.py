from server.runtime.app import serve
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app

serve(create_app, ServiceSettings())
