DROP TABLE oauth_authorizations;
