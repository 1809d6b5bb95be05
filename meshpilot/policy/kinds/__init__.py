"""The policy language's own kinds (Service, Gateway, Route): one module each, each turning one
document into its model class through `meshpilot.policy.fields`. References between documents
are checked afterwards, over the whole folder, by `meshpilot.policy.references`."""
