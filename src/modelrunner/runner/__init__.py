"""The steps of a job, wired from the pieces: start an image, process a region, complete the job."""
