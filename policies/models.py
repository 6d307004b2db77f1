# Models land with this app's issue.
