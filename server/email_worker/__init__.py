"""The email worker: delivers the jobs on `email-jobs` over SMTP and records each outcome."""
