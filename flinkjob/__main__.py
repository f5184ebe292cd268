from flinkjob.app import create_app
from flinkjob.settings import RuleEngineSettings
from server.runtime.app import serve

serve(create_app, RuleEngineSettings())
