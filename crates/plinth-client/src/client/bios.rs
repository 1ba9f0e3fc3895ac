//! BIOS settings (issue 21): a machine's BIOS, a change asked of it, the profiles and a pool's
//! profile.

use plinth_types::api::{
    BiosProfile, BiosProfileCreate, BiosRequest, Job, MachineBios, PoolBiosProfile,
};
use uuid::Uuid;

use super::Client;
use crate::{Error, path};

impl Client {
    /// `GET /machines/{id}/bios`.
    pub async fn machine_bios(&self, id: Uuid) -> Result<MachineBios, Error> {
        self.get(&path::machine_bios(id)).await
    }

    /// `PATCH /machines/{id}/bios`: a `bios_apply` job.
    pub async fn set_bios(&self, id: Uuid, req: &BiosRequest) -> Result<Job, Error> {
        self.patch(&path::machine_bios(id), req).await
    }

    pub async fn list_bios_profiles(&self) -> Result<Vec<BiosProfile>, Error> {
        self.get(&path::bios_profiles()).await
    }

    pub async fn get_bios_profile(&self, name: &str) -> Result<BiosProfile, Error> {
        self.get(&path::bios_profile(name)).await
    }

    pub async fn create_bios_profile(&self, req: &BiosProfileCreate) -> Result<BiosProfile, Error> {
        self.post(&path::bios_profiles(), req).await
    }

    pub async fn delete_bios_profile(&self, name: &str) -> Result<(), Error> {
        self.delete(&path::bios_profile(name)).await
    }

    /// `PUT /pools/{name}/bios-profile`.
    pub async fn set_pool_bios_profile(
        &self,
        pool: &str,
        req: &PoolBiosProfile,
    ) -> Result<PoolBiosProfile, Error> {
        self.call(
            reqwest::Method::PUT,
            &path::pool_bios_profile(pool),
            Some(req),
            None,
        )
        .await
    }
}
