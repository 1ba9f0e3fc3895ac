//! plinth-api
