//! Host capability `wasi:config/store`, at the versions components import today
//! (`0.2.0-draft-2024-09-27`, Spin 4's SDK; `0.2.0-draft`, wasmCloud's; `0.2.0-rc.1`,
//! wasmtime's `wasi-config`):
//! a component reads its own manifest `config` table, the same values it also gets as
//! environment variables; Spin's `spin:variables@3.0.0` reads the same table. Always
//! granted: the table is the component's own, and holds
//! nothing of another's.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use crate::spec::ValidSpec;

mod draft {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wasi:config/imports@0.2.0-draft-2024-09-27",
    });
}

mod wasmcloud {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wasi:config/imports@0.2.0-draft",
    });
}

mod spin {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "spin:variables/imports@3.0.0",
    });
}

mod rc1 {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wasi:config/imports@0.2.0-rc.1",
    });
}

/// What a component's configuration holds: its manifest `config` table.
#[derive(Debug, Clone, Default)]
pub struct ConfigGrant {
    values: Arc<BTreeMap<String, String>>,
}

/// The configuration grant of a component under `spec`.
pub fn grant(spec: &ValidSpec) -> ConfigGrant {
    ConfigGrant {
        values: Arc::new(spec.config.clone()),
    }
}

impl ConfigGrant {
    fn get(&self, key: &str) -> Option<String> {
        self.values.get(key).cloned()
    }

    fn all(&self) -> Vec<(String, String)> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

struct Config;

impl HasData for Config {
    type Data<'a> = &'a mut ConfigGrant;
}

/// Adds `wasi:config/store` (both versions) to the linker; `get` gives the grant in a
/// store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut ConfigGrant,
) -> wasmtime::Result<()> {
    draft::wasi::config0_2_0_draft_2024_09_27::store::add_to_linker::<T, Config>(linker, get)?;
    rc1::wasi::config0_2_0_rc_1::store::add_to_linker::<T, Config>(linker, get)?;
    wasmcloud::wasi::config0_2_0_draft::store::add_to_linker::<T, Config>(linker, get)?;
    // Spin's variables are async in WIT (see `engine::Engines`).
    if linker.engine().get_concurrency_support() {
        spin::spin::variables::variables::add_to_linker::<T, Config>(linker, get)?;
    }
    Ok(())
}

impl spin::spin::variables::variables::Host for ConfigGrant {}

/// Spin's `variables.get` is `async` in WIT; it answers at once from the table. A Spin
/// variable's name is its `config` key, as written (Spin names are lower case).
impl<T: Send> spin::spin::variables::variables::HostWithStore<T> for Config {
    async fn get(
        accessor: &wasmtime::component::Accessor<T, Self>,
        name: String,
    ) -> Result<String, spin::spin::variables::variables::Error> {
        accessor.with(|mut access| access.get().get(&name)).ok_or(
            spin::spin::variables::variables::Error::Undefined(format!(
                "no variable `{name}`: add it to the component's `config` table"
            )),
        )
    }
}

impl draft::wasi::config0_2_0_draft_2024_09_27::store::Host for ConfigGrant {
    fn get(
        &mut self,
        key: String,
    ) -> Result<Option<String>, draft::wasi::config0_2_0_draft_2024_09_27::store::Error> {
        Ok(ConfigGrant::get(self, &key))
    }

    fn get_all(
        &mut self,
    ) -> Result<Vec<(String, String)>, draft::wasi::config0_2_0_draft_2024_09_27::store::Error>
    {
        Ok(self.all())
    }
}

impl wasmcloud::wasi::config0_2_0_draft::store::Host for ConfigGrant {
    fn get(
        &mut self,
        key: String,
    ) -> Result<Option<String>, wasmcloud::wasi::config0_2_0_draft::store::Error> {
        Ok(ConfigGrant::get(self, &key))
    }

    fn get_all(
        &mut self,
    ) -> Result<Vec<(String, String)>, wasmcloud::wasi::config0_2_0_draft::store::Error> {
        Ok(self.all())
    }
}

impl rc1::wasi::config0_2_0_rc_1::store::Host for ConfigGrant {
    fn get(
        &mut self,
        key: String,
    ) -> Result<Option<String>, rc1::wasi::config0_2_0_rc_1::store::Error> {
        Ok(ConfigGrant::get(self, &key))
    }

    fn get_all(
        &mut self,
    ) -> Result<Vec<(String, String)>, rc1::wasi::config0_2_0_rc_1::store::Error> {
        Ok(self.all())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ComponentSpec;

    #[test]
    fn a_component_reads_its_own_table_and_nothing_else() {
        let mut spec = ComponentSpec::default();
        spec.config.insert("GREETING".into(), "hi".into());
        let grant = grant(&spec.validate().unwrap());
        assert_eq!(grant.get("GREETING").as_deref(), Some("hi"));
        assert_eq!(grant.get("HOME"), None, "not the host's environment");
        assert_eq!(grant.all(), [("GREETING".to_string(), "hi".to_string())]);
    }
}
