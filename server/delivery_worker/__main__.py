from server.delivery_worker.app import create_app
from server.runtime.app import serve
from server.runtime.settings import ServiceSettings

serve(create_app, ServiceSettings())
