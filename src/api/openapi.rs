//! The OpenAPI document, generated from the handlers' annotations and
//! served at `/openapi.json`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{catalog, holds, ops, orders, queue, sessions};

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme("customer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        c.add_security_scheme("admin", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "boxoffice", description = "Ticket booking that sells every seat exactly once. \
        Errors are RFC 9457 problem+json documents with a machine-readable `code`."),
    paths(
        sessions::create_session,
        catalog::create_venue, catalog::get_venue,
        catalog::create_event, catalog::patch_event, catalog::get_event, catalog::search_events,
        catalog::availability, catalog::seats, catalog::seats_stream,
        holds::create_hold, holds::get_hold, holds::delete_hold, holds::my_holds,
        orders::checkout, orders::get_order, orders::my_orders, orders::ticket_qr, orders::public_key,
        orders::check_in, orders::refund_order, orders::cancel_order,
        queue::join, queue::status, queue::stream, queue::overview,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    modifiers(&Security),
    tags((name = "sessions"), (name = "catalog"), (name = "holds"), (name = "orders"), (name = "queue"), (name = "ops"))
)]
pub struct ApiDoc;
