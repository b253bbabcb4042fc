"""Running a study: storage and paths, the base model, opening and resuming the study, the trial
loop of one or many workers, the front kept while searching, and ``run_study`` / ``run_worker``."""
