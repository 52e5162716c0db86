//! Traffic control: the ingress qdisc and a match-all u32 filter whose mirred action redirects
//! every frame a link receives out of another link, what Kata calls "tcfilter" networking
//! (`tc qdisc add dev A ingress; tc filter add dev A parent ffff: protocol all u32 match u8 0 0
//! action mirred egress redirect dev B`). Both go away with the link.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, NetlinkError, Result};

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// `ETH_P_ALL`: the filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// The filter's priority (`prio 1`, as Kata).
const FILTER_PRIORITY: u16 = 1;

fn ifindex(op: &str, index: u32) -> Result<i32> {
    i32::try_from(index).map_err(|_| NetlinkError::InvalidInput(format!("{op}: bad index")))
}

impl Netlink {
    /// `tc qdisc add dev <index> handle ffff: ingress`.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        let op = format!("add an ingress qdisc to interface index {index}");
        let mut msg = TcMessage::with_index(ifindex(&op, index)?);
        msg.header.handle = INGRESS_HANDLE;
        msg.header.parent = TcHandle::INGRESS;
        msg.attributes.push(TcAttribute::Kind("ingress".into()));
        self.request(
            &op,
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// `tc filter add dev <from> parent ffff: protocol all prio 1 u32 match u8 0 0 action
    /// mirred egress redirect dev <to>`: every frame `from` receives leaves through `to`
    /// instead (the ingress qdisc must be on `from` already).
    pub fn add_redirect_filter(&mut self, from: u32, to: u32) -> Result<()> {
        let op = format!("redirect interface index {from}'s ingress to index {to}");
        let mut msg = TcMessage::with_index(ifindex(&op, from)?);
        msg.header.parent = INGRESS_HANDLE;
        // tcm_info: priority in the high half, the protocol (network byte order) in the low.
        msg.header.info = (u32::from(FILTER_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
        msg.attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.to_string()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(match_all())),
            TcOption::U32(TcFilterU32Option::Action(vec![redirect_to(to)])),
        ]));
        self.request(
            &op,
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }
}

/// One key with a zero mask: every frame matches; terminal, so the action is taken.
fn match_all() -> TcU32Selector {
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![TcU32Key::default()];
    sel
}

/// mirred egress redirect to `to`; the frame is consumed (TC_ACT_STOLEN), as tc does.
fn redirect_to(to: u32) -> TcAction {
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    action
}
