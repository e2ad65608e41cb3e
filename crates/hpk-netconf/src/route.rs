//! IPv4 routes: default route, prefix routes, and `ip route get` lookups.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::RouteMessageBuilder;
use tracing::debug;

use crate::{Error, Netlink, Result, error::netlink_errno};

impl Netlink {
    /// Sets the main table's IPv4 default route to `gateway` via the link,
    /// like `ip route replace default via GW dev DEV`: an existing default
    /// route is replaced, and repeating the call changes nothing.
    pub async fn add_default_route(&self, gateway: Ipv4Addr, index: u32) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        self.replace_route(index, format!("replace default route via {gateway}"), route)
            .await
    }

    /// The main table's IPv4 default route as (gateway, output link), the
    /// lowest metric one if there are several. A default route without a
    /// gateway is not reported.
    pub async fn default_route_v4(&self) -> Result<Option<(Ipv4Addr, u32)>> {
        let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(dump)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("list ipv4 routes", e))?;

        let best = routes
            .iter()
            .filter(|route| is_main_default(route))
            .filter_map(|route| Some((priority(route), gateway(route)?, oif(route)?)))
            .min_by_key(|(metric, ..)| *metric);
        Ok(best.map(|(_, gateway, oif)| (gateway, oif)))
    }

    /// Sets the route to `dest` via the link, like `ip route replace DEST
    /// [via GW] dev DEV [onlink]`. Host bits of `dest` are ignored. Without a
    /// gateway the route has link scope; `onlink` lets a gateway lie outside
    /// every subnet of the link (how flannel routes to other nodes).
    pub async fn add_route_v4(
        &self,
        dest: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        index: u32,
        onlink: bool,
    ) -> Result<()> {
        let dest = dest.trunc();
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest.network(), dest.prefix_len())
            .output_interface(index);
        builder = match gateway {
            Some(gateway) => builder.gateway(gateway),
            None => builder.scope(RouteScope::Link),
        };
        if onlink {
            builder = builder.onlink();
        }

        let via = gateway.map(|gw| format!(" via {gw}")).unwrap_or_default();
        let what = format!(
            "replace route {dest}{via}{}",
            if onlink { " onlink" } else { "" }
        );
        self.replace_route(index, what, builder.build()).await
    }

    /// How the kernel would send a packet to `dest`, like `ip route get DEST`:
    /// (gateway, output link, preferred source), or `None` when unreachable.
    pub async fn route_get_v4(
        &self,
        dest: Ipv4Addr,
    ) -> Result<Option<(Option<Ipv4Addr>, u32, Option<Ipv4Addr>)>> {
        let mut query = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, 32)
            .build();
        // A lookup is not a route: clear the builder's defaults for new routes.
        query.header.table = RouteHeader::RT_TABLE_UNSPEC;
        query.header.protocol = RouteProtocol::Unspec;
        query.header.kind = RouteType::Unspec;

        let replies: std::result::Result<Vec<RouteMessage>, _> =
            self.handle.route().get(query).execute().try_collect().await;
        match replies {
            Ok(routes) => Ok(routes
                .first()
                .and_then(|route| Some((gateway(route), oif(route)?, pref_source(route))))),
            Err(e) if is_unreachable(&e) => Ok(None),
            Err(e) => Err(Error::netlink(format!("look up route to {dest}"), e)),
        }
    }

    async fn replace_route(&self, index: u32, what: String, route: RouteMessage) -> Result<()> {
        debug!(link = index, "{what}");
        let Err(source) = self.handle.route().add(route).replace().execute().await else {
            return Ok(());
        };
        Err(Error::netlink(
            format!("{what} dev {}", self.label(index).await),
            source,
        ))
    }
}

fn is_unreachable(err: &rtnetlink::Error) -> bool {
    matches!(
        netlink_errno(err),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
    )
}

fn is_main_default(route: &RouteMessage) -> bool {
    let table = route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Table(table) => Some(*table),
        _ => None,
    });
    let table = table.unwrap_or(u32::from(route.header.table));
    route.header.destination_prefix_length == 0
        && route.header.kind == RouteType::Unicast
        && table == u32::from(RouteHeader::RT_TABLE_MAIN)
}

fn gateway(route: &RouteMessage) -> Option<Ipv4Addr> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn pref_source(route: &RouteMessage) -> Option<Ipv4Addr> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn oif(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

/// The route's metric; a missing RTA_PRIORITY means 0.
fn priority(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RouteAttribute::Priority(metric) => Some(*metric),
            _ => None,
        })
        .unwrap_or(0)
}
