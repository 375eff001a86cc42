"""The process plumbing under a trial: SIGTERM as a polite stop at a step boundary (`stop_request`),
progress beats for the hang watchdog (`progress`), the ranks of a multi-process trial (`distributed`),
and the check that the installed torch matches its pins (`environment`)."""
