"""The course's grading package.

``python -m autograder grade ASSIGNMENT --submissions DIR`` grades every submission in its own
sandboxed kernel and scores it with a verifier that the student's code cannot reach
(:mod:`autograder.grading`, :mod:`autograder.verifier`, :mod:`autograder.sandbox`);
``python -m autograder.release`` regenerates release/ from source/;
``python -m autograder.examples`` builds and grades example submissions.
"""
